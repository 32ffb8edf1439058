"""Trainers of this plugin, looked up by ``<ModelName>Trainer`` before RecBole's."""
