"""Model services: the seed's 模型服务, with their page metadata and their port."""
