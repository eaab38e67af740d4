"""Antibody V genes from ANARCI's germline table, and the benchmark's split (SPEC 7).

SPEC 7: "antibody V genes from ANARCI's germline table (`anarci` on PyPI, BSD licence, needs biopython):
`anarci.germlines.all_germlines["V"][chain][species]`, chain in H, K, L, IMGT-gapped strings (drop "-");
... Split: human genes are the held-out evaluation set; the other species train; an identical sequence never
sits in both."

Choices the SPEC leaves open, made here:
- within each side, alleles whose ungapped sequences are identical count once: the first by (chain, species,
  name) order is kept, so an evaluation never scores one sequence twice;
- a sequence found among the human genes is dropped from the training side (never the reverse);
- genes are ordered by (chain, species, name), and ``subset(genes, n)`` takes ``n`` of them evenly spaced over
  that order, so a small subset still holds heavy, kappa and lambda chains alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

CHAINS = ("H", "K", "L")
HELD_OUT_SPECIES = "human"
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@dataclass(frozen=True)
class Gene:
    """One germline V gene.

    name: the IMGT allele, e.g. "IGHV1-18*01". chain: H, K or L. sequence: one-letter residues, IMGT gaps dropped.
    """

    name: str
    species: str
    chain: str
    sequence: str


class GeneSplit(NamedTuple):
    """train: the non-human genes (no sequence of ``held_out`` among them); held_out: the human genes."""

    train: list[Gene]
    held_out: list[Gene]


def genes_from_table(table: dict) -> list[Gene]:
    """Every V gene of chains H, K, L in an ANARCI-shaped table, gaps dropped, in (chain, species, name) order.

    table: ``{chain: {species: {name: gapped sequence}}}`` (``all_germlines["V"]``). A sequence holding anything
    other than the 20 standard residues raises ValueError (AntiBERTy's vocabulary has no other residue).
    """
    genes = []
    for chain in CHAINS:
        for species in sorted(table.get(chain, {})):
            for name in sorted(table[chain][species]):
                sequence = table[chain][species][name].replace("-", "")
                unknown = set(sequence) - set(RESIDUES)
                if unknown or not sequence:
                    raise ValueError(
                        f"germline table: {chain}/{species}/{name} holds {sorted(unknown) or 'no residue'}, "
                        f"expected one-letter residues of {RESIDUES}"
                    )
                genes.append(Gene(name, species, chain, sequence))
    return genes


@lru_cache(maxsize=1)
def load_genes() -> tuple[Gene, ...]:
    """All H, K and L V genes of ANARCI's germline table (the ``anarci`` package, the ``eval`` extra)."""
    try:
        from anarci.germlines import all_germlines  # optional extra: eval
    except ImportError as error:
        raise ImportError(
            f"the antibody benchmark needs ANARCI's germline table: pip install 'mdfast[eval]' ({error})"
        ) from None
    return tuple(genes_from_table(all_germlines["V"]))


def split_genes(genes: list[Gene] | tuple[Gene, ...]) -> GeneSplit:
    """SPEC 7's split: human genes held out, the other species train; duplicates dropped (module docstring)."""
    held_out = _unique(g for g in genes if g.species == HELD_OUT_SPECIES)
    seen = {g.sequence for g in held_out}
    train = _unique(g for g in genes if g.species != HELD_OUT_SPECIES and g.sequence not in seen)
    return GeneSplit(train, held_out)


def held_out_genes(n: int | None = None) -> list[Gene]:
    """The evaluation genes (human, deduplicated), or ``n`` of them evenly spaced (``subset``)."""
    genes = split_genes(load_genes()).held_out
    return genes if n is None else subset(genes, n)


def subset(genes: list[Gene], n: int) -> list[Gene]:
    """``n`` genes evenly spaced over ``genes``' order: indices floor(i * len / n), i = 0..n-1."""
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= len(genes)):
        raise ValueError(f"genes: expected an int in [1, {len(genes)}], got {n!r}")
    return [genes[i * len(genes) // n] for i in range(n)]


def _unique(genes) -> list[Gene]:
    seen: set[str] = set()
    kept = []
    for gene in genes:
        if gene.sequence not in seen:
            seen.add(gene.sequence)
            kept.append(gene)
    return kept
