"""Next-word prediction by private federated learning (the setting of Apple's large-vocabulary PFL paper).

A word-level model pretrained on public text (fortunes) is fine-tuned across Shakespeare users' phones with
DP-FedAvg; each client updates and sends only the embedding rows of the words it saw (partial embedding updates).
"""
