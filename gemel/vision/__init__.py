"""The frozen image encoders and the image features they give (the features stage)."""
