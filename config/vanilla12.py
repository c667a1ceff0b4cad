# Vanilla (OpenELM) layer-wise scaling over 12 layers, narrow -> wide, 178.8M parameters.
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "vanilla"
n_layer = 12
ffn_scale = (2.0, 5.3)
attn_scale = (0.5, 2.0)
out_dir = "out/vanilla12"
