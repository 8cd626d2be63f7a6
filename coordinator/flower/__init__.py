"""The coordinator's Flower adapters: SuperLink service, ServerApp, message exchange, certificates, FedAvg."""
