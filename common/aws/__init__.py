"""AWS request signing (SigV4) and credentials from a workload identity, shared by the GPU agent's
S3 source and the forecaster's Amazon Managed Prometheus source. No AWS SDK: these are the two
small, documented protocols both need."""
