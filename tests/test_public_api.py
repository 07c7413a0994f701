import fedmarket
import strategies


def test_fedmarket_exports_exactly_its_sorted_all() -> None:
    public = {n for n in vars(fedmarket) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(fedmarket, n)).__name__ == "module"}
    assert fedmarket.__all__ == sorted(fedmarket.__all__)
    assert set(fedmarket.__all__) == public - modules


def test_strategies_all_is_sorted_and_importable() -> None:
    assert strategies.__all__ == sorted(strategies.__all__)
    for name in strategies.__all__:
        assert hasattr(strategies, name)
