# Isotropic 12-layer baseline, 181.1M parameters: FFN 3072 and 12/4 heads in every block.
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "isotropic"
n_layer = 12
ffn_scale = (4.0, 4.0)
attn_scale = (1.0, 1.0)
out_dir = "out/baseline12"
