# Framed LWS: vanilla's slope with a full-size first and last block, 179.4M parameters.
# Paper: arXiv 2509.06518, Table 2. The training recipe (393,216-token batches of 48 x 1024 per
# micro-step, 13,000 steps = 5.11B tokens, AdamW at a constant 6e-4) is train.py's default.
schedule = "framed"
n_layer = 18
ffn_scale = (0.5, 4.0)
attn_scale = (0.5, 1.0)
out_dir = "out/framed"
