"""lmx.hf.chat_template against transformers' apply_chat_template on the families' published
templates (tests/testdata/chat_templates, sources and licences in its README.md), strings and
token ids, on tokenizer folders built offline with each family's special tokens."""
import csv
import pathlib

import jinja2
import pytest
import transformers

from lmx.data import tokenizer as tokenizer_lib
from lmx.hf import chat_template, tokenizer as hf_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "tests/testdata/chat_templates"

# family -> (template file, special tokens in id order, named special tokens)
FAMILIES = {
    "qwen2.5": ("qwen2.5.jinja", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama3": ("llama3.jinja", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                "<|end_header_id|>", "<|eot_id|>"],
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "mistral-nemo": ("mistral-nemo.jinja", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
                     {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "gemma": ("gemma.jinja", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
              {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
}
SYSTEM = {"role": "system", "content": "You answer banking questions with the intent name."}
TURNS = [{"role": "user", "content": "I lost my card yesterday, can you block it?"},
         {"role": "assistant", "content": "lost_or_stolen_card"},
         {"role": "user", "content": "  And where's my transfer of £40 ? 東京 🙂 "},
         {"role": "assistant", "content": " pending_transfer\n"}]
CONVERSATIONS = {"system+4 turns": [SYSTEM] + TURNS, "4 turns": TURNS,
                 "system+user": [SYSTEM, TURNS[0]], "user": TURNS[:1],
                 "system+3 turns": [SYSTEM] + TURNS[:3]}


def _texts() -> list[str]:
    with open(REPO / "data/banking77/train.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)][:2000] + ["東京 🙂 £ intent_name"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, template, lmx tokenizer, transformers tokenizer) on one folder."""
    name = request.param
    file, specials, named = FAMILIES[name]
    template = (TEMPLATES / file).read_text(encoding="utf-8")
    folder = tmp_path_factory.mktemp(name)
    tokenizer_lib.train_byte_bpe(_texts(), 600, str(folder), specials=specials,
                                 config={"tokenizer_class": "PreTrainedTokenizerFast", **named},
                                 chat_template=template)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    return name, folder, hf_tokenizer.load_tokenizer(folder), hf


def _hf_render(hf, messages, **kwargs):
    try:
        return hf.apply_chat_template(messages, tokenize=False, **kwargs)
    except jinja2.exceptions.TemplateError as e:
        return f"TemplateError: {e}"


def _lmx_render(folder, messages, **kwargs):
    try:
        return chat_template.render(chat_template.load_chat_template(folder), messages,
                                    special_tokens=chat_template.special_tokens(folder), **kwargs)
    except jinja2.exceptions.TemplateError as e:
        return f"TemplateError: {e}"


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendered_strings_and_ids_equal_transformers(family, generation_prompt):
    """Every conversation renders to transformers' string (or the same TemplateError: Gemma
    refuses a system turn, Mistral / Gemma non-alternating roles) and encodes to its ids."""
    name, folder, lmx_tok, hf = family
    rendered = 0
    for key, messages in CONVERSATIONS.items():
        kwargs = dict(add_generation_prompt=generation_prompt)
        want, got = _hf_render(hf, messages, **kwargs), _lmx_render(folder, messages, **kwargs)
        assert got == want, (name, key)
        if want.startswith("TemplateError"):
            continue
        rendered += 1
        want_ids = hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
        assert lmx_tok.encode(got, add_special_tokens=False) == list(want_ids), (name, key)
    assert rendered >= 2  # every family renders most of them (Gemma: the ones without system)


def test_the_fixtures_render_their_families_markers(family):
    """The fixtures are the real templates: each writes its family's turn markers."""
    name, folder, _, _ = family
    text = _lmx_render(folder, TURNS[:2], add_generation_prompt=False)
    marker = {"qwen2.5": "<|im_start|>user\nI lost my card yesterday, can you block it?<|im_end|>",
              "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
              "mistral-nemo": "<s>[INST]I lost my card yesterday, can you block it?[/INST]"
                              "lost_or_stolen_card</s>",
              "gemma": "<start_of_turn>model\nlost_or_stolen_card<end_of_turn>\n"}[name]
    assert marker in text


def test_tojson_and_namespace_behave_as_in_transformers(tmp_path):
    """tojson keeps non-ASCII and does not HTML-escape; namespaces refuse _private names."""
    text = chat_template.render("{{ messages[0] | tojson }}",
                                [{"role": "user", "content": "<b>東京</b> & 'x'"}])
    assert text == '{"role": "user", "content": "<b>東京</b> & \'x\'"}'
    with pytest.raises(jinja2.exceptions.SecurityError):
        chat_template.render("{% set ns = namespace(_x=1) %}", [])
    with pytest.raises(jinja2.exceptions.TemplateError, match="boom"):
        chat_template.render("{{ raise_exception('boom') }}", [])


def test_a_folder_without_a_template_is_an_error_naming_it(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"{tmp_path} has no chat template"):
        chat_template.load_chat_template(tmp_path)


def test_whitespace_control_and_loop_controls_match_transformers():
    """trim_blocks / lstrip_blocks / {% continue %} / tojson(indent=2) as transformers has them
    (the published templates above strip whitespace by hand, so they would not notice)."""
    from transformers.utils.chat_template_utils import render_jinja_template
    template = ("{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n"
                "    <{{ m.role }}>{{ m | tojson(indent=2) }}\n{% endfor %}\n"
                "{% if add_generation_prompt %}  <assistant>{% endif %}")
    messages = [SYSTEM] + TURNS
    for generation_prompt in (False, True):
        [want], _ = render_jinja_template([messages], chat_template=template,
                                          add_generation_prompt=generation_prompt)
        assert chat_template.render(template, messages,
                                    add_generation_prompt=generation_prompt) == want
