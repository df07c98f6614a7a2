import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# keep CPU tests from oversubscribing the 2-core CI machine
os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm_tokenizer(tmp_path_factory):
    """The real SmolLM2 tokenizer, read from the GGUF once and saved as a fast HF tokenizer dir."""
    from transformers import AutoTokenizer

    from cptrain.models.hf import load_tokenizer

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    load_tokenizer("builtin:smollm2-135m").save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)
