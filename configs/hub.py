r"""The config of a diffusers model: a folder (model or pipeline) or a hub model id.

Run (convert, then sample; any key can be overridden as usual, e.g. the dataset for `likelihood`):
    python main.py --mode convert --config=configs/hub.py:hf://google/ncsnpp-celebahq-256 \
        --checkpoint=hf://google/ncsnpp-celebahq-256 --workdir=workdir/ncsnpp_celebahq_256
    python main.py --mode sample --config=configs/hub.py:hf://google/ncsnpp-celebahq-256 \
        --workdir=workdir/ncsnpp_celebahq_256

The argument after `:` is what `--checkpoint` takes (a folder, or `hf://OWNER/NAME[@REVISION]`);
the config is `score_jax.convert.load_diffusers_config` of it (README, "Hugging Face hub").
"""


def get_config(source=None):
    if not source:
        raise ValueError("configs/hub.py needs the model: --config=configs/hub.py:DIR or "
                         "--config=configs/hub.py:hf://OWNER/NAME[@REVISION]")
    from score_jax.convert import hub

    return hub.load_diffusers_config(source)
