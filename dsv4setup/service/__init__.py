"""`dsv4setup service`: the workdir's server under systemd (restart on failure, start at boot).

- systemd.py: the unit's name and place, systemctl, lingering, the install record
- unit.py: the unit text (the plan's argv and env, readiness, restart policy, journal + serve.log)
- run.py: the unit's main process (`python -m dsv4setup.service.run`)
- ready.py: the unit's readiness check (`python -m dsv4setup.service.ready`)
- manage.py: install, status, remove (the `dsv4setup.service/1` documents)
"""
