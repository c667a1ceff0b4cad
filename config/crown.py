# Crown LWS: narrow -> wide in the middle -> narrow, framed, 181.9M parameters (the paper's best).
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "crown"
n_layer = 18
ffn_scale = (0.5, 3.8, 0.5)
attn_scale = (0.5, 1.0, 0.5)
out_dir = "out/crown"
