"""A lab: a whole deployment of agents on one machine, for tests, benchmarks and the quickstart.

One harness starts everything: the tests (functional and end-to-end), the benchmarks
and `tools/quickstart.sh` all use this package, so what an operator sees in the
quickstart is what CI proves.

Parts, one module each:
- `procs`: subprocess helpers (run, wait_for, unique names, console scripts, stopping
  a process group);
- `netns`: `NamespaceHost`, a network namespace standing for a host, with the broker
  relayed into it;
- `configs`: configs rendered from the `etc/` samples, agents' command lines read
  from the `systemd/` units;
- `broker`: the queues and exchange of one lab, removed afterwards;
- `cluster`: `BrokerCluster`, a RabbitMQ cluster on this machine's loopback
  (tools/rabbitmq-cluster.sh, through `python -m agents.lab.broker`);
- `database`: a scratch PostgreSQL database for a controller, dropped afterwards;
- `host`: `LabHost`, one host (namespace, files, its l2-agent and compute-agent,
  libvirt test driver or qemu:///embed guests);
- `links`: veth links a scenario needs between or inside host namespaces;
- `controller`: `LabController`, agents-controller as a process in the root namespace;
- `lab`: `Lab`, the deployment: hosts, controller, agentctl pointed at it;
- `quickstart`: `python -m agents.lab.quickstart up|down` (tools/quickstart.sh).

What the package must not do: touch links of the root namespace, kill a process it did
not start, or leave anything behind when a lab is closed (namespaces, processes,
broker queues, databases, directories), also after a failure.
"""
