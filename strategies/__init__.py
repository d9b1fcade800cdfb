"""Server strategies: one file per method, thin glue over fedmoe_sim."""
