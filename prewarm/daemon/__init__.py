"""The daemon: one asyncio process that reads history, forecasts, plans and (when leader) acts."""
