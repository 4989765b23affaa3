"""The ledger contract's client: typed records (`ledger`), the connection and calls (`client`),
signed transactions with their nonces (`transactions`, `nonce_manager`), paged event reads
(`events`), settlement split to fit a block (`settlement`), the built artifacts (`artifacts`,
`abi/`), chain errors that say what to do (`errors`) and the bootstrap list (`bootstrap_list`)."""
