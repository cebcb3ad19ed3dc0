"""CLI: `python -m lmx.explain --workdir RUN (--text "..." | --input_file F | --image F)`.

Writes RUN/explain/ (or --out): index.html (self-contained), PNGs, summary.json.
A run without a tokenizer (synthetic data) reads each text as space-separated token ids.
"""
import json
import os

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_TEXT = flags.DEFINE_multi_string("text", [], "Text(s) to explain.")
_INPUT_FILE = flags.DEFINE_string("input_file", "", "A file with one text per line.")
_IMAGE = flags.DEFINE_multi_string("image", [], "Image file(s) (ResNet runs).")
_OUT = flags.DEFINE_string("out", "", "Output folder; default RUN/explain.")
_IG_STEPS = flags.DEFINE_integer("ig_steps", 64, "Integrated-gradients steps.")
_BASELINE = flags.DEFINE_enum("baseline", "pad", ["zero", "pad", "mask"], "IG reference.")
_METHODS = flags.DEFINE_list("methods", "integrated_gradients,grad_x_input,occlusion,rollout",
                             "Text methods (see lmx.explain.text.METHODS).")
flags.mark_flag_as_required("workdir")


def _read_images(paths, size):
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) / 255.0
              for p in paths]
    return (np.stack(images) - 0.5) / 0.5  # the digits experiment's normalisation


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from lmx.explain import pipeline, run as run_lib, text  # noqa: PLC0415
    run = run_lib.load_run(_WORKDIR.value)
    out_dir = _OUT.value or os.path.join(_WORKDIR.value, "explain")
    if _IMAGE.value:
        result = pipeline.explain_images(run, _read_images(_IMAGE.value,
                                                           run.config.model.image_size),
                                         out_dir, ig_steps=_IG_STEPS.value)
        print(json.dumps({k: result[k] for k in ("html", "pngs")}, indent=1))
        return
    texts = list(_TEXT.value)
    if _INPUT_FILE.value:
        with open(_INPUT_FILE.value, encoding="utf-8") as f:
            texts += [line.strip() for line in f if line.strip()]
    if not texts:
        raise app.UsageError("give --text, --input_file or --image")
    pad_id, mask_id = run.pad_and_mask_ids()
    options = text.Options(ig_steps=_IG_STEPS.value, baseline=_BASELINE.value, pad_id=pad_id,
                           mask_id=mask_id)
    batch = run_lib.encode_texts(run, texts)
    result = pipeline.explain_texts(run, batch, out_dir, texts, tuple(_METHODS.value), options)
    print(json.dumps({"html": result["html"],
                      "predictions": [r["adapted"]["label"] for r in result["records"]]}, indent=1))


if __name__ == "__main__":
    app.run(main)
