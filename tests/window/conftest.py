from tests.recipe.conftest import tokenizer, toy_env  # noqa: F401  (byte tokenizer, toy env registration)
