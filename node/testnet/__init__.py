"""Local multi-node testnets: layout (keys, configs, peers) and the processes that run them."""
