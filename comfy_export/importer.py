def from_workflow(data): raise NotImplementedError
def load_workflow(data): raise NotImplementedError
