"""Reading what a bundle declares without running it: the interface in cloud_model.py
(commands, inputs, outputs, setup options) and the build spec in modelcloud.yml."""
