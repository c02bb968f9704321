"""Scale-out over Ray Serve: one engine replica per GPU behind the same web page.

``launch.start_serve`` deploys the replicas (``replica.EngineReplica``) and returns a ``client.ServeEngine``,
which the UI uses exactly like a local ``Engine``. Requests cross the process boundary as the headless CLI's
JSON (``Request.to_dict``); results come back with their images, video and files as bytes (``wire``).
Ray is optional: nothing here imports it until a deployment is asked for.
"""

RAY_INSTALL_HINT = ("Ray Serve is not installed: pip install -r requirements-serve.txt "
                    "(ray[serve], pinned to the version this app is tested with)")
