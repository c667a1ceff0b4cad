# Vanilla (OpenELM) layer-wise scaling over 18 layers, narrow -> wide, 179.7M parameters.
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "vanilla"
n_layer = 18
ffn_scale = (1.0, 4.0)
attn_scale = (0.5, 1.0)
out_dir = "out/vanilla18"
