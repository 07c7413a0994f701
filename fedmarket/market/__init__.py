"""The data market: reward trees, listings and purchase flows over a Ledger and a ContentStore."""
