"""The device side: its profile (data, cap, ledger) and the Flower ClientApp."""

from fedmarket.device.app import handle_train, make_client_app
from fedmarket.device.profile import DeviceProfile, DeviceResolver

__all__ = ["DeviceProfile", "DeviceResolver", "handle_train", "make_client_app"]
