"""verl recipes of spa-rl, one folder per recipe as verl-recipe lays them out (``recipe/spa/``)."""
