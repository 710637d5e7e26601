"""The builder: code bundles into runnable environments, and those into health-checked replicas."""
