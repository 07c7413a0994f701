import inspect

import fedmarket.exceptions as exc_module
from fedmarket.exceptions import EXIT_CODES, FedmarketError


def _error_classes() -> list[type[FedmarketError]]:
    return [
        obj
        for obj in vars(exc_module).values()
        if inspect.isclass(obj) and issubclass(obj, FedmarketError)
    ]


def test_every_exit_code_is_registered_with_help_text() -> None:
    for cls in _error_classes():
        assert cls.exit_code in EXIT_CODES, cls
        assert EXIT_CODES[cls.exit_code].strip()


def test_exit_codes_stay_clear_of_shell_and_click_codes() -> None:
    assert all(0 < code < 126 for code in EXIT_CODES)
