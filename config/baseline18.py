# Equal-cost isotropic 18-layer baseline, 183.5M parameters: FFN 2048 and 9/3 heads everywhere.
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "isotropic"
n_layer = 18
ffn_scale = (2.5, 2.5)
attn_scale = (0.75, 0.75)
out_dir = "out/baseline18"
