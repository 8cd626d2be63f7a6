"""The agency's Flower adapters: ClientApp, SuperNode service and its poller, horizontal FedAvg client."""
