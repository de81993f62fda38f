"""The sandbox and the processes of a run: the keeper, its namespaces and Landlock rules, the fork server, the policy of what a run may write and see."""
