"""``build_encoder``, the family registry, size presets and the parameter table.

Presets aim at three sizes for every family: ``small`` (5-10M parameters, trains on a laptop
CPU), ``medium`` (~30M) and ``large`` (~110M). QuartzNet and Citrinet also carry their
published configurations (``15x5``, ``citrinet-256/512/1024``). ``parameter_table()`` prints
the exact counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from asr.config import from_dict
from asr.encoders.base import StreamingEncoder

__all__ = ["FAMILIES", "PRESETS", "build_encoder", "encoder_config", "parameter_table"]


def _lstm() -> tuple[type, Callable[..., StreamingEncoder]]:
    from asr.encoders.lstm import LSTMConfig, LSTMEncoder

    return LSTMConfig, LSTMEncoder


def _conformer() -> tuple[type, Callable[..., StreamingEncoder]]:
    from asr.encoders.conformer import ConformerConfig, ConformerEncoder

    return ConformerConfig, ConformerEncoder


def _quartznet() -> tuple[type, Callable[..., StreamingEncoder]]:
    from asr.encoders.convnet import QuartzNetConfig, QuartzNetEncoder

    return QuartzNetConfig, QuartzNetEncoder


def _citrinet() -> tuple[type, Callable[..., StreamingEncoder]]:
    from asr.encoders.convnet import CitrinetConfig, CitrinetEncoder

    return CitrinetConfig, CitrinetEncoder


def _ssm() -> tuple[type, Callable[..., StreamingEncoder]]:
    from asr.encoders.ssm import SSMConfig, SSMEncoder

    return SSMConfig, SSMEncoder


FAMILIES: dict[str, Callable[[], tuple[type, Callable[..., StreamingEncoder]]]] = {
    "conformer": _conformer,
    "quartznet": _quartznet,
    "citrinet": _citrinet,
    "lstm": _lstm,
    "ssm": _ssm,
}

# family -> preset -> config overrides (on top of the dataclass defaults).
def _scaled_quartznet(f: float) -> dict[str, Any]:
    r = lambda c: int(round(c * f / 32)) * 32  # noqa: E731
    return {
        "channels": [r(c) for c in (256, 256, 512, 512, 512)],
        "prologue_channels": r(256),
        "epilogue_channels": [r(512), r(1024)],
    }


# family -> preset -> config overrides (on top of the dataclass defaults).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "conformer": {
        "small": {"d_model": 144, "num_layers": 16, "num_heads": 4, "subsampling_channels": 144},
        "medium": {"d_model": 256, "num_layers": 18, "num_heads": 4, "subsampling_channels": 256},
        # FastConformer-Large shape (d=512, 17 layers, 8 heads)
        "large": {"d_model": 512, "num_layers": 17, "num_heads": 8, "subsampling_channels": 256},
    },
    "quartznet": {
        "small": {"num_blocks": 5},  # = 5x5
        "medium": {"num_blocks": 15, **_scaled_quartznet(1.25)},
        "large": {"num_blocks": 15, **_scaled_quartznet(2.5)},
        "5x5": {"num_blocks": 5},
        "10x5": {"num_blocks": 10},
        "15x5": {"num_blocks": 15},  # published: 18.9M
    },
    "citrinet": {
        "small": {"channels": 256},  # = Citrinet-256
        "medium": {"channels": 512},  # = Citrinet-512
        "large": {"channels": 896},
        "256": {"channels": 256},
        "512": {"channels": 512},
        "1024": {"channels": 1024},
    },
    "lstm": {
        "small": {"input_size": 256, "hidden_size": 640, "proj_size": 256, "num_layers": 3},
        "medium": {"input_size": 512, "hidden_size": 1024, "proj_size": 384, "num_layers": 5},
        "large": {"input_size": 768, "hidden_size": 1920, "proj_size": 768, "num_layers": 5},
    },
    "ssm": {
        "small": {"d_model": 256, "num_layers": 12},
        "medium": {"d_model": 512, "num_layers": 18},
        "large": {"d_model": 1024, "num_layers": 16, "subsampling_channels": 256},
    },
}


def encoder_config(name: str, preset: str | None = None, **overrides: Any) -> Any:
    """The config dataclass of family ``name``: defaults, then ``preset``, then overrides.

    Unknown keys and wrong types raise ``asr.config.ConfigError`` (a ValueError) naming them.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(FAMILIES)}")
    config_cls, _ = FAMILIES[name]()
    values: dict[str, Any] = {}
    if preset is not None:
        presets = PRESETS.get(name, {})
        if preset not in presets:
            raise ValueError(
                f"unknown preset {preset!r} for encoder {name!r}; choose one of {', '.join(presets)}"
            )
        values.update(presets[preset])
    values.update(overrides)
    return from_dict(config_cls, values)


def build_encoder(name: str, preset: str | None = None, **config: Any) -> StreamingEncoder:
    """Build an encoder: ``build_encoder("conformer", preset="small", d_model=192)``.

    ``name`` is one of ``conformer``, ``quartznet``, ``citrinet``, ``lstm``, ``ssm``;
    ``preset`` one of ``PRESETS[name]`` (``small``, ``medium``, ``large``, and published sizes
    for QuartzNet/Citrinet) or None for the dataclass defaults; ``config`` overrides single
    fields of the family's config dataclass. A config dataclass instance may be passed as
    ``config=...`` instead (without ``preset``: it holds every field).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(FAMILIES)}")
    config_cls, encoder_cls = FAMILIES[name]()
    if "config" in config:
        cfg = config.pop("config")
        if not isinstance(cfg, config_cls):
            raise ValueError(f"config= must be a {config_cls.__name__}, got {type(cfg).__name__}")
        if preset is not None:  # every field of cfg would override the preset's
            raise ValueError(f"give preset= or config=, not both (preset {preset!r} with a {config_cls.__name__}): "
                             f"build the config from the preset with encoder_config({name!r}, {preset!r}, ...)")
        if config:
            cfg = encoder_config(name, None, **{**dataclasses.asdict(cfg), **config})
    else:
        cfg = encoder_config(name, preset, **config)
    return encoder_cls(cfg)


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(families: list[str] | None = None, print_table: bool = True) -> list[dict[str, Any]]:
    """Rows ``{"family", "preset", "params"}`` for every family and preset; prints a table."""
    rows = []
    for fam in families or list(FAMILIES):
        for preset in PRESETS.get(fam, {}):
            enc = build_encoder(fam, preset=preset)
            rows.append(
                {
                    "family": fam,
                    "preset": preset,
                    "params": count_parameters(enc),
                    "output_dim": enc.output_dim,
                    "subsampling": enc.subsampling,
                }
            )
            del enc
    if print_table:
        print(f"{'family':<10} {'preset':<15} {'params':>12} {'dim':>6} {'sub':>4}")
        for r in rows:
            print(
                f"{r['family']:<10} {r['preset']:<15} {r['params'] / 1e6:>11.2f}M "
                f"{r['output_dim']:>6} {r['subsampling']:>4}"
            )
    return rows

