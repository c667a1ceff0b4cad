# A crown-shaped model small enough to train on a laptop CPU in minutes, on the offline pydocs
# corpus (`python prepare_data.py --dataset pydocs`). 1.6M parameters in the blocks; the untied
# GPT-2 embedding and LM head add 6.4M each. Smaller rounding multiples keep the crown visible.
schedule = "crown"
n_layer = 8
d_model = 128
head_dim = 16
q_per_kv = 2
block_size = 256
ffn_scale = (0.5, 4.0, 0.5)
attn_scale = (0.5, 1.0, 0.5)
ffn_multiple = 32

data_dir = "data/pydocs"
out_dir = "out/tiny"
batch_tokens = 4096       # 16 sequences of 256
micro_batch = 16
max_steps = 300           # 1.2M tokens, about a third of pydocs
lr = 2e-3
lr_schedule = "cosine"
warmup_steps = 30
eval_interval = 100
eval_tokens = 65536
log_interval = 10
