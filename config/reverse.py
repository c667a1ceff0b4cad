# Reverse LWS: wide -> narrow, framed, 179.4M parameters.
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "reverse"
n_layer = 18
ffn_scale = (4.0, 0.5)
attn_scale = (1.0, 0.5)
out_dir = "out/reverse"
