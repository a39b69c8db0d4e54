"""A cluster in a box: N namespaced hosts on a private bridge, each with its own address,
sshd and CA-issued agent under mutual TLS, and link faults (cut, delay, loss) to apply."""
