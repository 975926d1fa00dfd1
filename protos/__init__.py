"""The .proto contracts and their generated Python modules (regenerate with protos/generate.sh)."""
