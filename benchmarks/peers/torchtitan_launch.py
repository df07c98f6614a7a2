"""Launch torchtitan 0.2.2's trainer with a llama3.2-1b flavor added ("1B"); the 8B flavor is built in.

torchtitan has no 1B llama3 flavor. This adds one to `torchtitan.models.llama3.llama3_args` (the dict
its TrainSpec hands the trainer), then runs `torchtitan.train.main(Trainer)`. Every argument is
torchtitan's own; run it under torchrun, e.g.

    torchrun --standalone --nproc_per_node 1 benchmarks/peers/torchtitan_launch.py \
        --model.name llama3 --model.flavor 1B --model.hf_assets_path DIR ...

The flavor matches cptrain's llama3.2-1b preset (dim 2048, 16 layers, 32 heads, 8 kv heads, FFN 8192,
RoPE theta 5e5 with llama3 scaling x32) except that torchtitan's llama3 model never ties the output
projection to the embedding: 1.50B parameters instead of 1.24B. The matmul work is the same; the
extra 262M parameters cost optimizer time and memory.
"""

from __future__ import annotations


def add_1b_flavor() -> None:
    from torchtitan.models.llama3 import llama3_args
    from torchtitan.models.llama3.model.args import RoPEScalingArgs, TransformerModelArgs

    # FFN: int(2 * 4 * 2048 / 3) = 5461; x1.5 = 8191; rounded up to a multiple of 256 = 8192
    llama3_args["1B"] = TransformerModelArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
        ffn_dim_multiplier=1.5, multiple_of=256, rope_theta=500000,
        rope_scaling_args=RoPEScalingArgs(scaling_factor=32.0),
    )


if __name__ == "__main__":
    # torchtitan's ConfigManager reads sys.argv[1:] (bound when it is imported): pass argv untouched
    add_1b_flavor()
    from torchtitan.train import Trainer, main

    main(Trainer)
