"""The network: streams between peers (`transport`), signed DHT records (`dht_records`), and the
hivemind DHT with its p2pd, watched and restarted (`dht_process`)."""
