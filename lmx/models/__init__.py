"""Model families: layers, transformer, resnet, vit, generation."""
