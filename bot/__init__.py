"""The twin as a Telegram bot and in the terminal: memory, replies, admin commands, retraining."""
