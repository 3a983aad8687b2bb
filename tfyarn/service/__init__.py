"""Long-running service mode: a tfyarn parameter-server cluster as a YARN service.

Platform teams keep it up between jobs (``tfyarn service launch conf/service.yaml``);
training jobs attach to it by name (``tfyarn.run(..., service="tfyarn-ps")``) and the
model state carries over from one job to the next.

- :mod:`~tfyarn.service.spec`: the YAML spec and the Yarnfile built from it (pure)
- :mod:`~tfyarn.service.client`: the YARN Services REST API (``/app/v1/services``)
- :mod:`~tfyarn.service.ps_server`: the ps containers' program (snapshots, restore)
- :mod:`~tfyarn.service.state`: the shared state dir (secret, snapshots)
- :mod:`~tfyarn.service.attach`: jobs find the ps through the ResourceManager, reconnect
- :mod:`~tfyarn.service.tensorboard`, :mod:`~tfyarn.service.standby`: the other components
"""
