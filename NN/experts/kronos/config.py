"""Constructor configurations of the Kronos tokenizer and predictor (the keys of their config.json).

Field names equal the released config.json keys so released checkpoints load unchanged; an unknown
key is an error naming it, because silently ignoring one could build a different network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what} config.json: unknown key(s) {unknown}; allowed: {sorted(names)}")
    return cls(**data)


@dataclass(frozen=True, slots=True)
class TokenizerConfig:
    d_in: int = 6
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 512
    n_enc_layers: int = 4
    n_dec_layers: int = 4
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    s1_bits: int = 10
    s2_bits: int = 10
    beta: float = 0.05
    gamma0: float = 1.0
    gamma: float = 1.1
    zeta: float = 0.05
    group_size: int = 4

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"tokenizer d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if self.s1_bits != self.s2_bits:
            # the reference decoder splits the code vector in two equal halves
            raise ValueError(f"tokenizer needs s1_bits == s2_bits, got {self.s1_bits}/{self.s2_bits}")
        if self.n_enc_layers < 1 or self.n_dec_layers < 1:
            raise ValueError("tokenizer needs n_enc_layers >= 1 and n_dec_layers >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        return _from_dict(cls, data, "tokenizer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PredictorConfig:
    s1_bits: int = 10
    s2_bits: int = 10
    n_layers: int = 8
    d_model: int = 512
    n_heads: int = 8
    ff_dim: int = 1024
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    token_dropout_p: float = 0.0
    learn_te: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or self.d_model % 4:
            raise ValueError(
                f"predictor d_model {self.d_model} must be divisible by n_heads {self.n_heads} and by 4 "
                "(the dependency layer always has 4 heads)"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictorConfig:
        return _from_dict(cls, data, "predictor")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Released architectures (ARCHITECTURE.md) plus our CPU-sized "nano".
_TOK: dict[str, Any] = dict(d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
                            s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05)
TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    "Kronos-Tokenizer-base": TokenizerConfig(**_TOK, group_size=4),
    "Kronos-Tokenizer-2k": TokenizerConfig(**_TOK, group_size=5),
    # nano: 2 encoder and 2 decoder blocks (the reference builds n_*_layers - 1 blocks)
    "nano": TokenizerConfig(d_in=6, d_model=64, n_heads=4, ff_dim=128, n_enc_layers=3, n_dec_layers=3,
                            ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0,
                            s1_bits=6, s2_bits=6, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05,
                            group_size=3),
}
PREDICTOR_PRESETS: dict[str, PredictorConfig] = {
    "Kronos-mini": PredictorConfig(n_layers=4, d_model=256, n_heads=4, ff_dim=512),
    "Kronos-small": PredictorConfig(n_layers=8, d_model=512, n_heads=8, ff_dim=1024),
    "Kronos-base": PredictorConfig(n_layers=12, d_model=832, n_heads=16, ff_dim=2048),
    "nano": PredictorConfig(s1_bits=6, s2_bits=6, n_layers=3, d_model=96, n_heads=4, ff_dim=192,
                            ffn_dropout_p=0.1, resid_dropout_p=0.1, token_dropout_p=0.0),
}
MAX_CONTEXT: dict[str, int] = {"Kronos-mini": 2048, "Kronos-small": 512, "Kronos-base": 512, "nano": 512}
# which tokenizer goes with which released predictor
HUB_TOKENIZER_FOR: dict[str, str] = {
    "NeoQuasar/Kronos-mini": "NeoQuasar/Kronos-Tokenizer-2k",
    "NeoQuasar/Kronos-small": "NeoQuasar/Kronos-Tokenizer-base",
    "NeoQuasar/Kronos-base": "NeoQuasar/Kronos-Tokenizer-base",
}
