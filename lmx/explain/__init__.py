"""lmx.explain: attributions, attention rollout / flow, Grad-CAM, faithfulness scores and
"what did the adapter change", written as a page a person opens (`python -m lmx.explain`).

Modules: `target` (what is differentiated), `attributions` (saliency, grad x input,
integrated gradients, SmoothGrad, occlusion), `attention` (rollout, flow), `gradcam`,
`faithfulness` (AOPC, randomisation check), `adapter_diff`, `text` (scores by method name),
`run` (load a workdir), `pipeline` / `report` (RUN/explain/).
"""
