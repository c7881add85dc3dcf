"""Models Genesis (Zhou et al. 2019): pretrain an encoder by restoring corrupted images."""

from ssltk import hookimpl
from ssltk_genesis.decoder import UNetDecoder
from ssltk_genesis.objective import Genesis, GenesisConfig

__all__ = ["Genesis", "GenesisConfig", "UNetDecoder"]


@hookimpl
def register_objectives(register):
    register(Genesis)
