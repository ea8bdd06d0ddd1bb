"""Apache RocketMQ 5: the asyncio bridge to its gRPC client, and a local broker for dev and tests."""
