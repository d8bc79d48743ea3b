"""The README's findings block is what the committed records say (`revgn.findings`)."""
from revgn import findings


def test_the_readme_findings_block_is_computed_from_the_records():
    assert findings.in_readme() == findings.block(), (
        "README.md's findings block differs from the records: run `python -m revgn.findings --write`")


def test_the_block_has_a_verdict_for_every_full_tier_regime():
    text = findings.block()
    for label in findings.rm.SETTINGS["full"].regimes():
        assert f"- {label}: " in text


def test_counts_agree_with_their_nouns():
    assert [findings._count(n, "paired seed") for n in (0, 1, 3)] == [
        "0 paired seeds", "1 paired seed", "3 paired seeds"]
