"""``python -m sb3_trust.zoo <command> <rl-zoo3 flags>``: see :mod:`sb3_trust.zoo`."""

from sb3_trust.zoo import main

if __name__ == "__main__":
    main()
